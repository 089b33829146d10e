"""How a decode server finds and talks to a prefill server.

The prefill serves a torch.distributed TCPStore on its bootstrap port. A decode server takes a
link id there (a counter), reads the port of the prefill's mailbox (a ZMQ ROUTER socket), and
both runners build the link's process group of two on the same store (transfer.py). Control
messages (messages.py) go through the mailbox: the scheduler polls it without blocking, a few
microseconds per step, where a store round trip would cost ~80 us and its blocking reads log a
warning at every timeout. Both listen on every interface, as torch.distributed's store does:
keep the bootstrap and mailbox ports on a trusted network."""
from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta
from typing import Any, Optional

import torch.distributed as dist
import zmq

from sgl.runtime.disaggregation.messages import Hello, decode, encode, error_text

logger = logging.getLogger("sgl.disaggregation")
LINKS_KEY = "sgl/links"       # counter of link ids
MAILBOX_KEY = "sgl/mailbox"   # the prefill's mailbox port


class BootstrapServer:
    """The prefill's side: the store and the mailbox. Messages arrive tagged with their link;
    replies go to the decode that said Hello on that link."""

    def __init__(self, port: int, timeout_s: float) -> None:
        try:
            self.store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=timeout_s))
        except Exception as e:
            raise RuntimeError(f"cannot serve the bootstrap store on port {port} ({error_text(e)}); "
                               "pass a free --disaggregation-bootstrap-port") from None
        self.port = port
        # Link ids from a random base: a restarted prefill does not mistake old links for new ones.
        self.store.add(LINKS_KEY, random.getrandbits(40))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.store.set(MAILBOX_KEY, str(self.sock.bind_to_random_port("tcp://*")))
        self.peers: dict[int, bytes] = {}  # link id -> the decode's socket identity

    def has_messages(self) -> bool:
        return bool(self.sock.poll(0))

    def poll(self) -> list[Any]:
        out = []
        while True:
            try:
                identity, data = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            except ValueError:  # not two frames
                continue
            try:
                msg = decode(data)
            except ValueError as e:
                logger.warning("dropped a mailbox message: %s", e)
                continue
            if isinstance(msg, Hello):
                self.peers[msg.link_id] = identity
            else:  # a link this server never opened still gets its LinkBroken answer
                self.peers.setdefault(msg.link_id, identity)
            out.append(msg)

    def send(self, msg: Any) -> None:
        identity = self.peers.get(msg.link_id)
        if identity is not None:
            self.sock.send_multipart([identity, encode(msg)], zmq.NOBLOCK)

    def forget(self, link_id: int) -> None:
        self.peers.pop(link_id, None)

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        self.store = None  # the last reference: the store's server stops


class DecodeLink:
    """The decode's side of one link to one prefill server. Pairing (store connect, link id,
    mailbox port) runs on a thread: a slow or dead prefill must not stall the scheduler."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.link_id: Optional[int] = None
        self.error: Optional[str] = None
        self.sock: Any = None
        self._mailbox_port = 0
        self._paired = threading.Event()
        threading.Thread(target=self._pair, name=f"sgl-pair-{host}:{port}", daemon=True).start()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _pair(self) -> None:
        try:
            store = dist.TCPStore(self.host, self.port, is_master=False,
                                  timeout=timedelta(seconds=self.timeout_s))
            self.link_id = store.add(LINKS_KEY, 1)
            self._mailbox_port = int(store.get(MAILBOX_KEY))
        except Exception as e:
            self.error = f"cannot reach the bootstrap server of prefill {self.addr}: {error_text(e)}"
        finally:
            self._paired.set()

    @property
    def is_paired(self) -> bool:
        return self._paired.is_set()

    def connect(self, ctx: zmq.Context, hello: Hello) -> None:
        """Once paired: open the mailbox and say Hello (ZMQ keeps messages in order)."""
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{self.host}:{self._mailbox_port}")
        self.send(hello)

    def send(self, msg: Any) -> None:
        self.sock.send(encode(msg), zmq.NOBLOCK)

    def poll(self) -> list[Any]:
        out = []
        while self.sock is not None:
            try:
                out.append(decode(self.sock.recv(zmq.NOBLOCK)))
            except zmq.Again:
                break
            except ValueError as e:
                logger.warning("dropped a mailbox message from %s: %s", self.addr, e)
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

"""Maps the three source rooms onto one import root: lang -> sgl, runtime -> sgl.runtime,
kernels -> sgl.kernels. Packages are discovered by walking the rooms so none is forgotten."""
import os

from setuptools import setup

ROOMS = {"sgl": "lang", "sgl.runtime": "runtime", "sgl.kernels": "kernels"}


def discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for root_pkg, room in ROOMS.items():
        package_dir[root_pkg] = room
        for dirpath, dirnames, filenames in os.walk(room):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, room)
            packages.append(root_pkg if rel == "." else root_pkg + "." + rel.replace(os.sep, "."))
    return packages, package_dir


packages, package_dir = discover()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"sgl.runtime": ["configs/*/*.json"]},
    include_package_data=True,
)

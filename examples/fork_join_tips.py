"""Fork/join: expand two tips in parallel branches, then gather them back.

The branches share the prompt so far (sent once, cached) and run concurrently, so the runtime
decodes them in one batch. `compile()` shows the same program as a call graph.

    python examples/fork_join_tips.py [--backend URL]
"""
from common import setup

import sgl


@sgl.function
def tip_suggestion(s, topic):
    s += "Here are two tips for " + topic + ".\n"
    s += "1. Balanced diet.\n2. Regular exercise.\n\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Now, expand tip {i + 1} into a short paragraph:\n"
        f += sgl.gen("detailed_tip", max_tokens=40, stop="\n\n")
    forks.join()
    s += "Tip 1: " + s["detailed_tip"][0] + "\n"
    s += "Tip 2: " + s["detailed_tip"][1] + "\n"
    s += "In summary" + sgl.gen("summary", max_tokens=30)


@sgl.function
def parallel_tips(s, topic):
    s += "Two tips for " + topic + ".\n"
    forks = s.fork(2)
    forks += lambda i: f"Tip {i + 1}:" + sgl.gen("tip", max_tokens=20, stop="\n")
    forks.join(mode="concate_and_append")  # append each branch's text to the main stream
    s += "\nSummary:" + sgl.gen("summary", max_tokens=20)


if __name__ == "__main__":
    setup(__doc__)
    state = tip_suggestion.run(topic="staying healthy", temperature=0)
    print(state.text())
    print("\n-- concate_and_append --")
    print(parallel_tips.run(topic="sleeping well", temperature=0).text())
    print("\n-- compiled call graph --")
    compiled = parallel_tips.compile()
    compiled.print_graph()
    print(compiled.run(topic="sleeping well", temperature=0)["summary"])

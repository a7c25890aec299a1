"""`python tests/no_torch.py ARGS...` runs `gandeploy ARGS...` with torch made unimportable, as in a serving image
that installed only `gandeploy[serve]`; `python tests/no_torch.py -c CODE` runs CODE the same way."""

import runpy
import sys

sys.modules["torch"] = None  # every `import torch` (and `from torch import ...`) now raises ImportError

if __name__ == "__main__":
    if sys.argv[1:2] == ["-c"]:
        exec(compile(sys.argv[2], "<no_torch -c>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = ["gandeploy", *sys.argv[1:]]
        runpy.run_module("gandeploy", run_name="__main__", alter_sys=True)

"""Make the exports the tests share (what the `exports` fixture makes) into DIR, so that the torch-free tests can
run in a serving install without torch (`make test-serve-profile`):

    python tests/make_exports.py DIR && GANDEPLOY_TEST_EXPORTS=DIR pytest tests/serve/test_server.py ...
"""

import sys
import tempfile
from pathlib import Path

from conftest import make_exports, train_tiny

if __name__ == "__main__":
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        made = make_exports(out, train_tiny(Path(tmp) / "tiny", "dcgan_mnist.yaml"),
                            train_tiny(Path(tmp) / "tiny_cond", "cdcgan_mnist.yaml"))
    print(" ".join(str(p) for p in made.values()))

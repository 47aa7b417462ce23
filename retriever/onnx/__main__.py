"""`python -m retriever.onnx`: the child process that prepares a model's export (see
retriever.onnx.prepare)."""

import sys

from retriever.onnx.prepare import child

if __name__ == "__main__":
    sys.exit(child())

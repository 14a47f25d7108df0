"""medserve: an inference server for clinical AI speaking the Open Inference Protocol."""

__version__ = "0.1.0"

"""Chinese policy-text theme classification: prepare, pretrain, train, evaluate, predict."""

__version__ = "0.1.0"

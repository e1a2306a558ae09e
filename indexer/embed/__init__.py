"""The one embedding engine, used by indexing and searching alike: find a model, fix a recipe, make an encoder.

models (find a folder, checksum it), recipe (what decides a vector), encoder (texts -> pooled vectors),
runners (PyTorch or ONNX Runtime behind one `run`), pooling (pure numpy), pair (two encoders answering
as one, their vectors joined). Only the encoder and the
runners import torch; importing this package imports neither.
"""

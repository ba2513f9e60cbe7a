"""Serving-side code that ships inside every `.mar`: preprocessing, request decoding, the
transport-agnostic classifier, and the TorchServe adapter. Never imports `model/`."""

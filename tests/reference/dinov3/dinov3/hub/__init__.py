# Shim, not Meta's file: upstream's dinov3/hub/__init__.py imports every hub entry point
# (classifiers, depthers, detectors, dinotxt, segmentors) and with them code this test reference
# does not carry. The backbone factories live in backbones.py, vendored unchanged.

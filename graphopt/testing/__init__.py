"""Shared fixtures and helpers for the test suite.

``graphopt.testing.archs`` builds reference architectures (ResNet-50, MobileNetV2/V3-Small,
BERT, a DenseNet) as ONNX models with onnx.helper and numpy only, no torch needed.
"""

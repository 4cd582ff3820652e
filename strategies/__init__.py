"""Avalanche adapters for LCMat memories (installed as ``replay_lcmat.strategies``)."""

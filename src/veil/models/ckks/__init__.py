"""CKKS inference of torch models: fix activations, plan parameters, compile, run.

Modules: ``fix`` (polynomial replacements and activation ranges), ``plan`` (depth, slots,
rotations and parameters before any encryption), ``infer`` (the compiled model, input encryption
and output decryption), ``lanes`` (the single-sample slot layout).
"""

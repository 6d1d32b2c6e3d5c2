"""CKKS inference of torch models: fix activations, plan parameters, compile, run.

Modules, in dependency order: ``stages`` (internal: lowering into stages, depth and slot
checks), ``values`` (internal: the encrypted input/output), ``lanes`` (the single-sample taps
layout), ``packact`` / ``packed`` / ``packrun`` / ``packbound`` (the packed single-sample
layout: folded activations, lowering, evaluation, error prediction and parameters),
``single`` (the packed candidate of a plan), ``cost`` (the cost model that chooses a
single-sample layout), ``plan`` (depth, slots, rotations and parameters before any
encryption), ``infer`` (the compiled model, input encryption and output decryption), and
``fix`` (polynomial replacements and activation ranges).
"""

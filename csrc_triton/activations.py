"""The activation table: name -> the ``ACT`` constexpr code of the Triton kernels. The one definition;
``stadapter_fast`` (op validation, the PyTorch path, the CLI) and the kernels' ``act_fwd`` /
``act_grad`` branches (``csrc_triton/common.py``) follow it. Plain Python: importing it neither
imports Triton nor decorates kernels.

Adding an activation: a new entry here, one ``elif ACT == code`` branch in each of ``act_fwd`` and
``act_grad``, and its PyTorch definition in ``stadapter_fast.ops.dwconv_tokens.act_fwd``/``act_grad``;
``tests/ops/test_activations.py`` then checks the kernels' forward and derivative against autograd.
"""

ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "quick_gelu": 4, "silu": 5}

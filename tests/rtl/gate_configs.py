"""The gate's test configurations, shared by its bench (`test_gate.py`) and `test_exp_fx.py`.

`small` has the default 16-bit logits; `odd` has 12-bit logits and odd
fraction widths; `largest` has the most experts, top-k and groups the gate takes.
"""

from pymodel.config import AccelConfig

CONFIGS = {
    "small": AccelConfig(max_tokens=64, max_top_k=4, max_experts=16, max_groups=4),
    "odd": AccelConfig(
        max_tokens=16,
        max_top_k=3,
        max_experts=12,
        max_groups=3,
        logit_bits=12,
        logit_frac_bits=5,
        gate_frac_bits=12,
        gate_weight_bits=14,
    ),
    "largest": AccelConfig(max_tokens=8, max_top_k=8, max_experts=256, max_groups=8),
}

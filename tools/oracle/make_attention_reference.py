#!/usr/bin/env python3
"""Reference for Ember's masked attention (unit test in crates/ember/src/nn/attention.rs).

Usage (from the repository root): /work/torchvenv/bin/python tools/oracle/make_attention_reference.py

Writes tests/fixtures/attention_mask_reference.safetensors (float32): q [2,3,5,4], k/v [2,3,7,4], key_mask [2,1,1,7]
(additive: 0 or -inf, one masked key in batch 0, two in batch 1) and torch's
F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask) as `out`; and the causal variant on square inputs
(q/k/v [2,3,6,4], causal_key_mask [2,1,1,6], `causal_out` with the causal mask and the key mask combined, as
transformers' CLIPTextModel combines them). Deterministic: torch.manual_seed(0).
"""

import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "attention_mask_reference.safetensors")


def key_mask(batch, m, masked):
    mask = torch.zeros(batch, 1, 1, m)
    for b, keys in enumerate(masked):
        mask[b, 0, 0, keys] = float("-inf")
    return mask


def main():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    mask = key_mask(2, 7, [[3], [1, 5]])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    cq, ck, cv = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    cmask = key_mask(2, 6, [[2], [3, 4]])
    causal = torch.full((6, 6), float("-inf")).triu(1)
    causal_out = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=causal + cmask)
    tensors = {"q": q, "k": k, "v": v, "key_mask": mask, "out": out, "causal_q": cq, "causal_k": ck,
               "causal_v": cv, "causal_key_mask": cmask, "causal_out": causal_out}
    save_file({name: t.contiguous() for name, t in tensors.items()}, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

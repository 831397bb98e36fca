"""Reference for Ember's 77-token padding and truncation (tests/fixtures/tokens_padded.json).

Uses transformers' CLIPTokenizer on the HF files derived from OpenAI's CLIP vocabulary
(../shared/models/clip-tokenizer/derived), configured as SD 1.x's tokenizer (pad token <|endoftext|>),
called as diffusers' StableDiffusionPipeline does: padding="max_length", max_length=77, truncation=True.
For truncated prompts it also records the dropped ids (untruncated ids[76:-1]) and their decoded text.

Run from the repository root (deterministic, CPU only, no network):
    /work/torchvenv/bin/python tools/oracle/make_token_reference.py
"""
import json
import os

import transformers
from transformers import CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_DIR = os.path.join(ROOT, "..", "shared", "models", "clip-tokenizer", "derived")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokens_padded.json")
MAX_LEN = 77

PROMPTS = [
    "",
    "fire",
    "a photograph of an astronaut riding a horse",
    # 75 content tokens: fits exactly, no truncation.
    " ".join(["a"] * 75),
    # 76 content tokens: one dropped.
    " ".join(["a"] * 75) + " horse",
    # A long real-world prompt with punctuation: several words dropped.
    "a highly detailed matte painting of a cozy cabin in the snowy mountains at dusk, warm light in the windows, "
    "smoke rising from the chimney, pine trees, northern lights in the sky, by greg rutkowski and thomas kinkade, "
    "trending on artstation, 8k, octane render, volumetric lighting, cinematic composition, ultra sharp focus, "
    "hyperrealistic, masterpiece, award winning photograph, golden hour, depth of field, bokeh",
]


def main():
    tok = CLIPTokenizer.from_pretrained(TOK_DIR, pad_token="<|endoftext|>", model_max_length=MAX_LEN)
    assert tok.pad_token_id == 49407 and tok.bos_token_id == 49406, "not SD 1.x's tokenizer setup"
    cases = []
    for prompt in PROMPTS:
        padded = tok(prompt, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
        full = tok(prompt, truncation=False).input_ids
        dropped_ids = full[MAX_LEN - 1 : -1] if len(full) > MAX_LEN else []
        cases.append(
            {
                "prompt": prompt,
                "ids": padded,
                "untruncated_len": len(full),
                "truncated": len(full) > MAX_LEN,
                "dropped_ids": dropped_ids,
                "dropped_text": tok.decode(dropped_ids).strip(),
            }
        )
    doc = {
        "generator": "tools/oracle/make_token_reference.py",
        "transformers": transformers.__version__,
        "max_length": MAX_LEN,
        "pad_token_id": tok.pad_token_id,
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()

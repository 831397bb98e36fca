#!/usr/bin/env python3
"""Reference parses and weighted conditioning for Ember's prompt language (crates/ember/tests/prompt_weighting.rs).

Usage (from the repository root; needs `pip install compel`, tested with compel 2.5.1):

    /work/torchvenv/bin/python tools/oracle/make_prompt_reference.py

Loads the tiny model's tokenizer and text encoder (tests/fixtures/tiny-sd, float32, CPU) and writes:

  tests/fixtures/prompt_reference.json         the cases and, for each, compel's parse of the positive and negative
                                                prompt (fragments with weights, or a blend), plus parse-only cases
  tests/fixtures/prompt_reference.safetensors  cond/{i}, uncond/{i}: [1, 77*chunks, 16] float32 per case
  tests/fixtures/prompt_reference_mask.json    the same for compel's default DownweightMode.MASK: every case above with
  tests/fixtures/prompt_reference_mask.safetensors  a weight < 1 (index `case` into the cases above) plus MASK_CASES;
                                                also clip/ids, clip/mask, clip/out: transformers' CLIPTextModel on
                                                token ids with an attention mask (one masked run, one all-ones)

Conditioning is what InvokeAI 2.3's `get_uc_and_c_and_ec` computes, with compel configured as Ember:
  - InvokeAI 2.x pre-processing, restated here from ldm/invoke/conditioning.py: newlines -> spaces; `[words]` are
    removed (replaced by a space, runs of spaces collapsed) and joined into the negative prompt; a positive prompt
    that splits into more than one `text:weight` piece (split_weighted_subprompts) becomes a compel Blend of the
    pieces' parses, weights normalised to sum 1 unless skip_normalize (zero sum -> equal weights).
  - Compel(truncate_long_prompts=<case>, downweight_mode=REMOVE (MASK for the _mask files),
    split_long_text_mode=BRUTAL); the negative prompt is
    the case's negative plus the bracketed words; cond and uncond are then padded with
    compel.pad_conditioning_tensors_to_same_length.
Deterministic: no randomness is involved.
"""

import importlib.metadata
import json
import os
import re

import torch
from compel import Compel, DownweightMode
from compel.embeddings_provider import SplitLongTextMode
from compel.prompt_parser import Blend, FlattenedPrompt, PromptParser
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd")
OUT_JSON = os.path.join(ROOT, "tests", "fixtures", "prompt_reference.json")
OUT_TENSORS = os.path.join(ROOT, "tests", "fixtures", "prompt_reference.safetensors")
OUT_MASK_JSON = os.path.join(ROOT, "tests", "fixtures", "prompt_reference_mask.json")
OUT_MASK_TENSORS = os.path.join(ROOT, "tests", "fixtures", "prompt_reference_mask.safetensors")

LONG = ("a breathtaking panorama of a mountain valley at dawn, mist over a winding river, pine forests, snow capped "
        "peaks, golden light on the cliffs, a small wooden cabin with smoke from the chimney, deer grazing in a "
        "meadow, wildflowers in the foreground, dramatic clouds, highly detailed matte painting, trending on "
        "artstation, sharp focus, volumetric lighting, warm colors, wide angle lens, cinematic composition, "
        "masterpiece, award winning photograph")

# (prompt, negative, truncate, skip_normalize)
CASES = [
    ("a photo of a cat on a mat", "", False, False),
    ("a cat+ sitting on a mat++ , cozy--", "blurry", False, False),
    ("a red- cat with (green eyes)0.5 and (a tiny hat)0.1", "", False, False),
    ("a ((portrait)1.3 of an old man)1.2, (dramatic lighting)++", "low quality", False, False),
    ('"oil painting"1.4 of (a harbour).attend(0.8) at night', "", False, False),
    ("a sign saying \\(hello\\) world+", "", False, False),
    ('("a photo of a cat", "an oil painting of a dog").blend(0.7, 0.3)', "", False, False),
    ('("a cat", "a (dog)1.3").blend(0.5, 0.25, no_normalize)', "", False, False),
    ("a cat:0.25 a dog:0.75", "", False, False),
    ("a cat:1 a (dog)++:0.5", "", False, True),
    (LONG, "ugly", False, False),
    (LONG.replace("wildflowers", "(wildflowers)1.4").replace("dramatic clouds", "(dramatic clouds)0.6"),
     "", False, False),
    ("(" + LONG + ")1.1", "", True, False),
    (LONG, "", True, False),
    ("", "blurry, ugly", False, False),
    ("a cat [blurry] on a mat [ugly hands]", "low quality", False, False),
    ("a (cat on a mat", LONG, False, False),
]

# Extra cases for DownweightMode.MASK only: a down-weighted fragment spanning the chunk boundary of a long prompt,
# straddling or wholly past the truncation point, at the very start, weight 0, and in the negative prompt.
MASK_CASES = [
    (LONG.replace("wide angle lens, cinematic composition", "(wide angle lens, cinematic composition)0.4"), "", False,
     False),
    (LONG.replace("wide angle lens", "(wide angle lens)0.5"), "", True, False),
    (LONG.replace("masterpiece, award winning photograph", "(masterpiece, award winning photograph)0.3"), "", True,
     False),
    ("(a cat)0.3 on a mat", "", False, False),
    ("a cat on a (mat)0", "", False, False),
    ("a cat on a mat", "(blurry)0.5, (ugly)0.2 hands", False, False),
]

# Parse-only cases (compel syntax, no InvokeAI pre-processing).
PARSES = [
    "a cat+ (sat on)1.3 ((the mat)++)0.5 x--",
    "(a\\(b\\) c, d.)+ e",
    "(unbalanced cat",
    "cat-x word- \"q q\"1.2 (x).attend(0.5)",
    "(cat)-0.5",
    "(cat)1.",
    "a,b,c",
    "hello (world",
    "a) b",
    "(a (b)0.5)2",
    "word+++ other---",
    "(\"nested\" quotes)1.5",
    "x .5",
    "(x).5",
    "well-known +3 a - b",
    '("a, b", c).blend(2, 2)',
    "(cat, dog).blend()",
]

# Legacy `text:weight` splits (InvokeAI 2.x split_weighted_subprompts), as (text, skip_normalize).
LEGACY = [
    ("a cat:0.25 a dog:0.75", False),
    ("a cat:1 a dog:0.5", True),
    ("a time\\: now:2 later", False),
    ("cat:0 dog:0", False),
    ("a:b", False),
    ("x::-1.5 y", False),
]


def split_weighted_subprompts(text, skip_normalize=False):
    """InvokeAI 2.x: `prompt` = run of non-colons or escaped colons; then colons and an optional weight."""
    pattern = re.compile(r"(?P<prompt>(?:\\:|[^:])+)(?::+(?P<weight>-?\d+(?:\.\d+)?)?\s*|$)")
    parts = [(m.group("prompt").replace("\\:", ":"), float(m.group("weight") or 1)) for m in pattern.finditer(text)]
    if skip_normalize:
        return parts
    total = sum(w for _, w in parts)
    if total == 0:
        return [(p, 1 / max(len(parts), 1)) for p, _ in parts]
    return [(p, w / total) for p, w in parts]


def split_negative(text):
    """InvokeAI 2.x: `[words]` -> removed from the prompt and joined into the negative prompt."""
    words = re.findall(r"\[(.*?)\]", text)
    if not words:
        return text, ""
    return re.sub(" +", " ", re.sub(r"\[(.*?)\]", " ", text)), " ".join(words)


def describe(obj):
    if isinstance(obj, Blend):
        return {"blend": [describe(p) for p in obj.prompts], "weights": obj.weights, "normalize": obj.normalize_weights}
    return {"fragments": [[f.text, f.weight] for f in obj.children]}


def parse(text):
    return Compel.parse_prompt_string(text).prompts[0]


def invokeai_prompts(prompt, negative, skip_normalize):
    prompt = prompt.replace("\n", " ")
    positive, bracketed = split_negative(prompt)
    pieces = split_weighted_subprompts(positive, skip_normalize)
    if len(pieces) > 1:
        positive_obj = Blend(prompts=[parse(p) for p, _ in pieces], weights=[w for _, w in pieces],
                             normalize_weights=not skip_normalize)
    else:
        positive_obj = parse(positive)
    negative_text = " ".join(t for t in (negative, bracketed) if t.strip()) if bracketed else negative
    return positive_obj, parse(negative_text)


def has_downweight(obj):
    if isinstance(obj, Blend):
        return any(has_downweight(p) for p in obj.prompts)
    return any(f.weight < 1 for f in obj.children)


def conditioning(tokenizer, encoder, mode, prompt, negative, truncate, skip_normalize):
    compel = Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=truncate,
                    downweight_mode=mode, split_long_text_mode=SplitLongTextMode.BRUTAL)
    positive_obj, negative_obj = invokeai_prompts(prompt, negative, skip_normalize)
    with torch.no_grad():
        cond, _ = compel.build_conditioning_tensor_for_prompt_object(positive_obj)
        uncond, _ = compel.build_conditioning_tensor_for_prompt_object(negative_obj)
        cond, uncond = compel.pad_conditioning_tensors_to_same_length([cond[0], uncond[0]])
    cond = cond.reshape(1, -1, cond.shape[-1]).float().contiguous()
    uncond = uncond.reshape(1, -1, uncond.shape[-1]).float().contiguous()
    return cond, uncond, positive_obj, negative_obj


def write_mask_reference(tokenizer, encoder):
    tensors, cases = {}, []
    todo = [(i, c) for i, c in enumerate(CASES)
            if any(has_downweight(o) for o in invokeai_prompts(c[0], c[1], c[3]))] + [(None, c) for c in MASK_CASES]
    for j, (i, (prompt, negative, truncate, skip_normalize)) in enumerate(todo):
        cond, uncond, _, _ = conditioning(tokenizer, encoder, DownweightMode.MASK, prompt, negative, truncate,
                                          skip_normalize)
        tensors[f"cond/{j}"], tensors[f"uncond/{j}"] = cond, uncond
        cases.append({"case": i, "prompt": prompt, "negative": negative, "truncate": truncate,
                      "skip_normalize": skip_normalize, "chunks": cond.shape[1] // 77})
    # The text encoder alone with an attention mask (0 = ignore that key), as compel's MASK mode calls it.
    ids = tokenizer("a red cat with green eyes on a mat", padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    masks = torch.ones(2, 77, dtype=torch.long)
    masks[0, 2:4] = 0
    masks[0, 6] = 0
    with torch.no_grad():
        out = encoder(ids.repeat(2, 1), attention_mask=masks).last_hidden_state
    tensors["clip/ids"] = ids.repeat(2, 1).to(torch.int64).contiguous()
    tensors["clip/mask"] = masks.float().contiguous()
    tensors["clip/out"] = out.float().contiguous()
    with open(OUT_MASK_JSON, "w") as f:
        json.dump({"compel_version": importlib.metadata.version("compel"), "cases": cases}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    save_file(tensors, OUT_MASK_TENSORS)
    print(f"wrote {OUT_MASK_JSON} and {OUT_MASK_TENSORS} ({len(cases)} cases)")


def main():
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), torch_dtype=torch.float32).eval()
    tensors, cases = {}, []
    for i, (prompt, negative, truncate, skip_normalize) in enumerate(CASES):
        compel = Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=truncate,
                        downweight_mode=DownweightMode.REMOVE, split_long_text_mode=SplitLongTextMode.BRUTAL)
        positive_obj, negative_obj = invokeai_prompts(prompt, negative, skip_normalize)
        with torch.no_grad():
            cond, _ = compel.build_conditioning_tensor_for_prompt_object(positive_obj)
            uncond, _ = compel.build_conditioning_tensor_for_prompt_object(negative_obj)
            cond, uncond = compel.pad_conditioning_tensors_to_same_length([cond[0], uncond[0]])
        tensors[f"cond/{i}"] = cond.reshape(1, -1, cond.shape[-1]).float().contiguous()
        tensors[f"uncond/{i}"] = uncond.reshape(1, -1, uncond.shape[-1]).float().contiguous()
        cases.append({"prompt": prompt, "negative": negative, "truncate": truncate, "skip_normalize": skip_normalize,
                      "parsed": describe(positive_obj), "parsed_negative": describe(negative_obj),
                      "chunks": cond.reshape(-1, cond.shape[-1]).shape[0] // 77})
    parses = [{"text": t, "parsed": describe(parse(t))} for t in PARSES]
    for p in parses:
        print(repr(p["text"]), "->", p["parsed"])
    legacy = [{"text": t, "skip_normalize": s, "pieces": split_weighted_subprompts(t, s)} for t, s in LEGACY]
    with open(OUT_JSON, "w") as f:
        json.dump({"compel_version": importlib.metadata.version("compel"), "cases": cases, "parses": parses, "legacy": legacy}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file(tensors, OUT_TENSORS)
    print(f"wrote {OUT_JSON} and {OUT_TENSORS} ({len(cases)} cases)")
    write_mask_reference(tokenizer, encoder)


if __name__ == "__main__":
    main()

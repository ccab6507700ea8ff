"""Export steps of the peers that have no command line of their own, as one command each:

python -m benchmarks.peer_exports ort-int4 FP32_DIR OUT_DIR [--block-size 32] [--accuracy-level 4]
    ONNX Runtime's MatMulNBits int4 quantizer on optimum's fp32 export (what optimum users do).
python -m benchmarks.peer_exports llama-quantize IN.gguf|DIR OUT.gguf TYPE
    llama.cpp's own quantizer (llama_model_quantize through llama-cpp-python).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def ort_int4(fp32_dir: Path, out: Path, block_size: int, accuracy_level: int) -> None:
    """Quantize every MatMul of `fp32_dir`/model.onnx to 4 bits; copy config/tokenizer files."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32_dir / "model.onnx"))
    quant = MatMulNBitsQuantizer(
        model, block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level
    )
    quant.process()
    quant.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=False)
    for item in fp32_dir.iterdir():
        if item.is_file() and not item.name.startswith("model.onnx"):
            shutil.copy2(item, out / item.name)


def llama_quantize(src: Path, dst: Path, qtype: str) -> None:
    """llama.cpp's quantizer: `src` GGUF (f32/f16/bf16) to `dst` of type `qtype` (e.g. q4_k_m)."""
    import llama_cpp

    if src.is_dir():  # an export directory: its single .gguf file
        found = sorted(src.rglob("*.gguf"))
        if len(found) != 1:
            raise SystemExit(f"error: {src} holds {len(found)} .gguf files, expected 1")
        src = found[0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise SystemExit(f"error: unknown llama.cpp quant type {qtype}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SystemExit(f"error: llama_model_quantize returned {rc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_exports")
    sub = parser.add_subparsers(dest="step", required=True)
    q4 = sub.add_parser("ort-int4")
    q4.add_argument("fp32_dir", type=Path)
    q4.add_argument("out", type=Path)
    q4.add_argument("--block-size", type=int, default=32)
    q4.add_argument("--accuracy-level", type=int, default=4)
    lq = sub.add_parser("llama-quantize")
    lq.add_argument("src", type=Path)
    lq.add_argument("dst", type=Path)
    lq.add_argument("qtype")
    args = parser.parse_args(argv)
    if args.step == "ort-int4":
        ort_int4(args.fp32_dir, args.out, args.block_size, args.accuracy_level)
    else:
        llama_quantize(args.src, args.dst, args.qtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())

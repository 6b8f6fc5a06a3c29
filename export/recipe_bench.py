"""Measure INT8 recipes: agreement with fp32 on held-out photos, per engine, and speed.

``python -m export.recipe_bench resnet18 [resnet50] [--recipes a,b] [--speed]`` exports the
``--weights random`` model (seed 0), quantises it with each recipe on the default calibration
photos (``export/calibration.py``, 4 samples per photo), and compares the INT8 file with the
fp32 file on the verification photos, 10 crops each (the 4 corners and centre of the 256
resize, and their mirror images: 70 held-out inputs, never used for calibration), on ONNX
Runtime's CPU provider and on OpenVINO. ``--speed`` also times fp32 and INT8 on both engines at
batch 1 and 8, the four interleaved round by round (images/s of the median round). The numbers
go to docs/PRECISION.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from contract.agreement import compare
from contract.cpuinfo import read_cpuinfo
from contract.images.decode import decode
from contract.modelmeta import Preprocessing
from contract.photos import verification_photos
from export.calibration import samples, skimage_photos
from export.fold import fuse_conv_bn
from export.onnx_export import NHWCUint8Classifier, export_onnx
from export.quantize import Recipe, quantize
from export.resnet import build
from export.weights import load_into, random_weights
from server.models.engines import Engine, EngineOptions, open_engine

ENGINES = ("cpu", "openvino")
RECIPES: dict[str, Recipe] = {
    "minmax-pc-u8s8": Recipe(),
    "minmax-pc-u8s8-reduce": Recipe(reduce_range=True),
    "minmax-pt-u8s8": Recipe(per_channel=False),
    "minmax-pc-s8s8-sym": Recipe(activation_type="QInt8", options={"ActivationSymmetric": True}),
    "minmax-pc-u8u8": Recipe(weight_type="QUInt8"),
    "percentile-pc-u8s8": Recipe(method="Percentile"),
    "entropy-pc-u8s8": Recipe(method="Entropy"),
    "minmax-pc-u8s8-conv-gemm": Recipe(op_types=("Conv", "Gemm")),
    "percentile-pc-u8s8-reduce": Recipe(method="Percentile", reduce_range=True),
    "entropy-pc-u8s8-reduce": Recipe(method="Entropy", reduce_range=True),
    "minmax-pt-u8s8-reduce": Recipe(per_channel=False, reduce_range=True),
    "minmax-pc-u8s8-reduce-conv-gemm": Recipe(reduce_range=True, op_types=("Conv", "Gemm")),
    "minmax-pc-u8s8-reduce-float-logits": Recipe(
        reduce_range=True, options={"OpTypesToExcludeOutputQuantization": ["Gemm"]}
    ),
    "percentile-pc-u8s8-reduce-float-logits": Recipe(
        method="Percentile",
        reduce_range=True,
        options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
    ),
}


def ten_crops(spec: Preprocessing) -> NDArray[np.uint8]:
    """torchvision's TenCrop(crop) after Resize(resize) of every verification photo."""
    from contract.images.transform import resized_size

    out = []
    for photo in verification_photos():
        img = decode(photo.data)
        img = img.resize(resized_size(*img.size, spec.resize_size), resample=2)
        arr = np.asarray(img)
        h, w, c = arr.shape[0], arr.shape[1], spec.crop_size
        top, left = round((h - c) / 2), round((w - c) / 2)
        for y, x in ((0, 0), (0, w - c), (h - c, 0), (h - c, w - c), (top, left)):
            crop = arr[y : y + c, x : x + c]
            out += [crop, crop[:, ::-1]]
    return np.ascontiguousarray(np.stack(out))


def _time(engine: Engine, batch: NDArray[np.uint8]) -> float:
    start = time.perf_counter()
    engine.run(0, batch)
    return time.perf_counter() - start


def speed(engines: dict[str, Engine], images: NDArray[np.uint8], repeats: int) -> dict[str, float]:
    """Images per second per engine at batch ``len(images)``: one untimed run each, then
    ``repeats`` rounds in which every engine runs once in turn (so a change of machine load
    hits all of them alike); the median round of each engine."""
    for e in engines.values():
        e.run(0, images)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(repeats):
        for k, e in engines.items():
            times[k].append(_time(e, images))
    return {k: len(images) / statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("architectures", nargs="+")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--speed", action="store_true")
    p.add_argument(
        "--rounds", type=int, default=20, help="--speed: timed rounds at batch 1 (half at 8)"
    )
    p.add_argument("--per-photo", type=int, default=4)
    p.add_argument("--noise-calibration", action="store_true", help="calibrate on noise instead")
    p.add_argument(
        "--held-out-calibration",
        action="store_true",
        help="diagnostic, never a recipe: calibrate on the 70 held-out crops themselves (what "
        "better calibration photos could at best give)",
    )
    args = p.parse_args()
    torch.set_grad_enabled(False)
    cpu = read_cpuinfo()
    threads = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp())
    for arch in args.architectures:
        weights = random_weights(arch, 0)
        spec = weights.preprocessing
        model = build(arch)
        load_into(model, weights.state_dict)
        fp32 = tmp / f"{arch}.onnx"
        meta = {
            "resnet_server.format": "1",
            "architecture": arch,
            "weights": "random",
            "weights_source": "random",
            "weights_sha256": weights.sha256,
            "random_weights": "true",
            "preprocessing": json.dumps(spec.to_dict()),
            "accuracy": "{}",
            "labels": json.dumps([str(i) for i in range(1000)]),
            "input_name": "images",
            "input_layout": "NHWC",
            "input_dtype": "uint8",
            "output_name": "logits",
            "precision": "fp32",
        }
        wrapped = NHWCUint8Classifier(fuse_conv_bn(model.eval()), spec.mean, spec.std)
        export_onnx(wrapped, fp32, crop_size=spec.crop_size, opset=17, meta=meta)
        held_out = ten_crops(spec)
        if args.held_out_calibration:
            calib = held_out
        elif args.noise_calibration:
            rng = np.random.default_rng(0)
            calib = rng.integers(0, 256, (40, 224, 224, 3), dtype=np.uint8)
        else:
            calib = samples(skimage_photos().photos, spec, per_photo=args.per_photo)
        base = {
            prov: open_engine(fp32, EngineOptions(provider=prov, threads=threads), cpu)
            for prov in ENGINES
        }
        ref = {prov: e.run(0, held_out) for prov, e in base.items()}
        for name in args.recipes.split(","):
            path = tmp / f"{arch}-{name}.onnx"
            start = time.perf_counter()
            model_int8 = quantize(fp32, path, calib, RECIPES[name])
            for k, v in meta.items():
                entry = model_int8.metadata_props.add()
                entry.key, entry.value = k, (v if k != "precision" else "int8")
            onnx.save(model_int8, str(path))
            seconds = time.perf_counter() - start
            int8: dict[str, Engine] = {}
            for prov in ENGINES:
                try:
                    eng = open_engine(path, EngineOptions(provider=prov, threads=threads), cpu)
                except Exception as e:  # report and go on with the next recipe
                    print(
                        json.dumps(
                            {
                                "arch": arch,
                                "recipe": name,
                                "engine": prov,
                                "error": f"{type(e).__name__}: {e}"[:300],
                            }
                        ),
                        flush=True,
                    )
                    continue
                int8[prov] = eng
                a = compare(ref[prov], eng.run(0, held_out))
                line = {
                    "arch": arch,
                    "recipe": name,
                    "engine": prov,
                    "calib_samples": len(calib),
                    "quantize_s": round(seconds, 1),
                    **a.to_dict(),
                    "executed": eng.report.precision,
                    "layers": eng.report.layers,
                }
                print(json.dumps(line), flush=True)
            if args.speed:
                timed = {
                    f"{p} {k}": e for p in int8 for k, e in (("fp32", base[p]), ("int8", int8[p]))
                }
                for batch, rounds in ((1, args.rounds), (8, max(3, args.rounds // 2))):
                    ips = speed(timed, held_out[:batch], rounds)
                    ratio = {p: round(ips[f"{p} int8"] / ips[f"{p} fp32"], 2) for p in int8}
                    print(
                        json.dumps(
                            {
                                "arch": arch,
                                "recipe": name,
                                "batch": batch,
                                "rounds": rounds,
                                "threads": threads,
                                "images_per_s": {k: round(v, 1) for k, v in ips.items()},
                                "int8_over_fp32": ratio,
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()

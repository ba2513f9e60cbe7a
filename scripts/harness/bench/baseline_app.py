"""The baseline: a model server written the way the people we serve write one today (FastAPI +
uvicorn, the model loaded at start, PIL + torchvision transforms per request, `UploadFile`).
It has none of our handler's checks, metrics or protocols on purpose: it is what we compare with.

    BENCH_CHECKPOINT=runs/fashion-mnist/model.pt uvicorn scripts.harness.bench.baseline_app:app --port 8000
    curl -F file=@image.png http://127.0.0.1:8000/predict
"""
from __future__ import annotations

import io
import os

import torch
import torchvision.transforms as T
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from model import checkpoint

ckpt = checkpoint.load(os.environ.get("BENCH_CHECKPOINT", "runs/fashion-mnist/model.pt"))
model = checkpoint.build_net(ckpt).eval()
labels = ckpt["labels"]
spec = checkpoint.preprocess_spec(ckpt)
mode = "L" if spec.channels == 1 else "RGB"
# The same numbers as the checkpoint's preprocessing, written as a torchvision pipeline: a plain
# resize to the input size, or (photos) the shorter side to `resize_shorter` and a centre crop.
resizing = ([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width))]
            if spec.resize == "resize_center_crop" else [T.Resize((spec.height, spec.width))])
transform = T.Compose([*resizing, T.ToTensor(), T.Normalize(spec.mean, spec.std)])

app = FastAPI()


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    image = Image.open(io.BytesIO(await file.read())).convert(mode)
    x = transform(image).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    top = probs.topk(5)
    return {labels[i]: round(float(p), 6) for p, i in zip(top.values, top.indices)}

"""OpenCV's MergeDebevec on the bracket `tessera bench hdr` uses (5 x 512x512 RGB 8-bit, x4
exposure steps from 1 ms, a random scene through a gamma-2.2 camera), against a memory copy
of the bracket bytes in the same run: the peer number for issue 6.

    python3 -m venv /tmp/cv && /tmp/cv/bin/pip install opencv-python-headless numpy
    /tmp/cv/bin/python benches/hdr_opencv.py
"""
import time

import cv2
import numpy as np

rng = np.random.default_rng(1)
h = w = 512
radiance = 2.0 ** rng.uniform(-5, 5, (h, w, 3))
times = np.array([1e-3 * 4**j for j in range(5)], dtype=np.float32)
images = [
    (255 * np.minimum(radiance * t * 8, 1) ** (1 / 2.2)).round().astype(np.uint8)
    for t in times
]
# The camera's inverse as OpenCV's (linear-domain) response, (256, 1, 3).
response = ((np.maximum(np.arange(256), 0.5) / 255.0) ** 2.2 / 8).astype(np.float32)
response = np.repeat(response[:, None, None], 3, axis=2)
merge = cv2.createMergeDebevec()
src = np.concatenate([i.ravel() for i in images])
dst = np.empty_like(src)


def best(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return min(out)


copy = best(lambda: np.copyto(dst, src), 50)
debevec = best(lambda: merge.process(images, times, response), 20)
print(f"| opencv {cv2.__version__} MergeDebevec ({cv2.getNumThreads()} threads) | {copy:.5f} | {debevec:.5f} | {debevec / copy:.1f}x |")

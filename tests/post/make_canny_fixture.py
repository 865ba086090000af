#!/usr/bin/python3
"""Writes the canny test fixture: inputs and OpenCV's cv2.Canny(img, 100, 200) of them (A1111's default
thresholds, aperture 3, L1 gradient; A1111 calls cv2.Canny on the RGB array with no smoothing first).

Run with Debian's python3-opencv (apt-get install python3-opencv; 4.6.0 made the committed files):
    /usr/bin/python3 tests/post/make_canny_fixture.py
Outputs in tests/post/data/: canny_blobs.png (128x96 RGB: smoothed noise, photo-like soft edges at every
angle), canny_blobs_edges.png,
canny_synth.png (a seeded synthetic RGB image: shapes, a ramp and noise, with ties between channels),
canny_synth_edges.png, canny_gray.png / canny_gray_edges.png (the synthetic image in one channel).
The C test (test_control.c) requires mpass's mp_canny to give the same edge maps exactly.
"""
import os

import cv2
import numpy as np

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
os.makedirs(out, exist_ok=True)


def save(name, rgb):
    path = os.path.join(out, name)
    if rgb.ndim == 3:
        cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    else:
        cv2.imwrite(path, rgb)


def both(name, rgb):
    save(name + ".png", rgb)
    save(name + "_edges.png", cv2.Canny(rgb, 100, 200))  # RGB order, as A1111 passes it


rng = np.random.default_rng(16)
coarse = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
blobs = cv2.GaussianBlur(cv2.resize(coarse, (128, 96), interpolation=cv2.INTER_CUBIC), (5, 5), 1.5)
both("canny_blobs", blobs)

img = np.zeros((72, 96, 3), np.uint8)
img[:, :, 0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
cv2.circle(img, (30, 30), 18, (200, 40, 90), -1)
cv2.rectangle(img, (50, 10), (85, 60), (40, 220, 40), -1)
cv2.line(img, (5, 65), (90, 40), (250, 250, 250), 2)
img[40:55, 10:25] = 128  # equal channels: every pixel there is a three-way tie
img = np.clip(img.astype(np.int16) + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)
both("canny_synth", img)
both("canny_gray", cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))

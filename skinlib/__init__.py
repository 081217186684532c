"""skinlib: synthetic skin-disease image generation (maculopapular rash).

Conventions used across the package: images are float tensors in [-1, 1], NCHW, RGB;
masks are N1HW float/bool tensors with 1 = the thing named in the docstring (ill skin,
or, for GLIDE inpainting, a known pixel to keep). Seeds are explicit arguments.
"""
__version__ = "0.1.0"

"""The denoising networks: a U-Net for images, an MLP for 2-D data, and the guidance wrapper.

Book: The denoising network; Part 4 (classifier-free guidance).
"""

"""The denoising networks: a U-Net for images, an MLP for 2-D data, and the guidance wrapper;
and the autoencoder of latent diffusion.

Book: Example: DDPM (Part 2); Part 4 (classifier-free guidance, latent diffusion).
"""

"""The `latents` stage (`python -m tasks.latents`) and its published reader.

Other stages read the latent store only through `tasks.latents.store` and
`tasks.latents.dataset`, never through the stage module.
"""

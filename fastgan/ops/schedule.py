"""The alpha schedule of progressive growing (SPEC 6)."""


def fade_alpha(images_shown, fade_images):
    """Linear in images shown over the fade phase (`fade_images` long), then 1."""
    if fade_images <= 0:
        raise ValueError(f"fastgan: fade_images must be positive, got {fade_images}")
    if images_shown < 0:
        raise ValueError(f"fastgan: images_shown must be non-negative, got {images_shown}")
    return min(1.0, images_shown / fade_images)

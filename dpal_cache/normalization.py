"""The input normalisation every model here expects unless its config says otherwise: ImageNet's per-channel mean
and standard deviation of RGB values scaled to [0, 1]."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

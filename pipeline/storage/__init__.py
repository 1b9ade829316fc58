"""What is on disk: writing images and results, the request inside each image."""

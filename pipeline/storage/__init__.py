"""What is on disk: images and results, the request inside each image, the picks file."""

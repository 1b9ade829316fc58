"""The embedded server speaking the image API, and the images it renders."""

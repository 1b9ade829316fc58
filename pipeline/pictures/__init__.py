"""Post-processing: thumbnails, contact sheets, fonts and the HTML index."""

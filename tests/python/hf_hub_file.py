"""One data set file through Python's `huggingface_hub`, into or out of a given cache.

Usage: hf_hub_file.py download|cached ENDPOINT CACHE_DIR REPO FILE
  download: `hf_hub_download` from ENDPOINT (the tests' fake Hub) into CACHE_DIR;
  cached:   `hf_hub_download(..., local_files_only=True)`: only what CACHE_DIR already holds.
Prints the path of the file in the cache.
"""
import sys

from huggingface_hub import hf_hub_download

mode, endpoint, cache_dir, repo, filename = sys.argv[1:6]
path = hf_hub_download(
    repo_id=repo,
    filename=filename,
    repo_type="dataset",
    cache_dir=cache_dir,
    endpoint=endpoint,
    local_files_only=(mode == "cached"),
)
print(path)

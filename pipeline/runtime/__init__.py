"""Where the code runs: the device and its threads (device), the model hub cache and offline mode
(hub), content hashes of folders (digest)."""

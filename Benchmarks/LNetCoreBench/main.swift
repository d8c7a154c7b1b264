print("lnet-core-bench: not written yet")

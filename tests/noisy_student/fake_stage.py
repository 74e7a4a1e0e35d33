"""A stand-in stage for driver tests: appends its argument to a file, or fails.

`fail` exits 3 after writing; `sleep` writes its pid and sleeps (the driver-death test
kills the driver and checks that this child dies too); `slow` prints a progress line,
then takes 3 seconds; `flaky` takes a second and fails the first time it runs (as a
preempted stage would), then succeeds.
"""
import os
import sys
import time

if __name__ == "__main__":
  path, word = sys.argv[1], sys.argv[2]
  with open(path, "a") as f:
    f.write((f"{os.getpid()}" if word == "sleep" else word) + "\n")
  if word == "fail":
    sys.exit(3)
  if word == "sleep":
    time.sleep(120)
  if word == "flaky":
    first = not os.path.exists(path + ".flaky")
    print("first attempt" if first else "second attempt", flush=True)
    if first:
      open(path + ".flaky", "w").close()
      time.sleep(1)
      sys.exit(3)
  if word == "slow":
    print("halfway through the slow job", flush=True)
    time.sleep(3)

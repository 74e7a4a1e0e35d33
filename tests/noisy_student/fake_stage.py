"""A stand-in stage for driver tests: appends its argument to a file, or fails."""
import sys

if __name__ == "__main__":
  path, word = sys.argv[1], sys.argv[2]
  with open(path, "a") as f:
    f.write(word + "\n")
  if word == "fail":
    sys.exit(3)

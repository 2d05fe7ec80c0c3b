# Sourced by scripts/gpu_train.sh and scripts/gpu_finetune.sh: unpack MNIST from a tarball into
# torchvision's layout.
# unpack_mnist TARBALL ROOT: finds the four idx files (plain or .gz) anywhere in TARBALL, writes
# them to ROOT/MNIST/raw/ and exports DIFFUSION_TUTORIAL_DATA=ROOT; returns 1 (and says which
# file) when one is missing.
unpack_mnist() {
    local tarball=$1 root=$2 extract name f
    extract=$(mktemp -d)
    mkdir -p "$root/MNIST/raw"
    tar -xzf "$tarball" -C "$extract" || { echo "cannot unpack $tarball" >&2; return 1; }
    for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
        t10k-labels-idx1-ubyte; do
        f=$(find "$extract" -name "$name" -o -name "$name.gz" | head -n 1)
        if [ -z "$f" ]; then echo "$name not found in $tarball" >&2; return 1; fi
        case "$f" in
            *.gz) gunzip -c "$f" >"$root/MNIST/raw/$name" ;;
            *) cp "$f" "$root/MNIST/raw/$name" ;;
        esac
    done
    rm -rf "$extract"
    export DIFFUSION_TUTORIAL_DATA="$root"
}

#!/usr/bin/env bash
# Installs Alknet on a systemd gateway, or removes it. See `deploy/install.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [--prefix P] [--destdir D] [--bin PATH] [--[no-]ssh-login]
       deploy/install.sh --uninstall [--purge] [--prefix P] [--destdir D]

Installs Alknet on a systemd gateway:
  PREFIX/bin/alknet                              the binary (--bin PATH, default
                                                 target/release/alknet: cargo build --release)
  PREFIX/bin/git-remote-alknet                   a symlink to it: git's helper for alknet:// URLs
  /etc/systemd/system/alknet.service             the unit, ExecStart pointing at PREFIX/bin
  /etc/systemd/system/alknet.service.d/ssh-login.conf
                                                 with --ssh-login: SSH sessions as login users
                                                 (runs the service as root, unsandboxed)
  /etc/alknet/alknet.toml                        the configuration, every key documented
  /etc/sysctl.d/99-alknet.conf                   socket buffer sizes
  /etc/fail2ban/filter.d/alknet.conf             fail2ban filter and jail: a source is banned
  /etc/fail2ban/jail.d/alknet.local              after 5 failed authentications
  PREFIX/share/doc/alknet/                       README.md and INSTALL.md
  PREFIX/share/alknet/install.manifest           what was installed, for --uninstall

Running it again installs what changed and says "nothing changed" otherwise. A file under
/etc that was edited since it was installed is kept; the new version is written beside it as
FILE.new. --uninstall removes exactly the files the manifest lists (edited files under /etc
are kept and named); the data directory /var/lib/alknet (node key, identity store) is kept
unless --purge, which also removes /etc/alknet.

Options:
  --prefix P     installation prefix for the binary and docs (default /usr/local)
  --destdir D    stage everything under directory D (packaging, tests): needs no root, and
                 runs no systemctl, sysctl or fail2ban-client but prints what to run
  --bin PATH     the alknet binary to install (default: target/release/alknet of this tree)
  --ssh-login    also install the ssh-login drop-in (see deploy/alknet.service.d/); later
                 runs keep it until --no-ssh-login removes it
  --uninstall    remove what an earlier run installed
  --purge        with --uninstall: also remove /var/lib/alknet and /etc/alknet
  -h, --help     this text

Without --destdir it must run as root; it then runs `systemctl daemon-reload`, applies the
sysctl file and reloads fail2ban when it runs, and prints the command that starts Alknet.
EOF
}

die_usage() {
    echo "install.sh: $1" >&2
    echo "Try 'deploy/install.sh --help'." >&2
    exit 2
}

die() {
    echo "install.sh: $1" >&2
    exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tree="$(dirname "$here")"

prefix=/usr/local
destdir=
bin=
ssh_login=  # 1: install the drop-in, 0: remove it, empty: as an earlier run left it
uninstall=0
purge=0
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix | --destdir | --bin)
        if [ $# -lt 2 ] || [ -z "$2" ]; then
            die_usage "$1 needs a value"
        fi
        case "$1" in
        --prefix) prefix="$2" ;;
        --destdir) destdir="$2" ;;
        --bin) bin="$2" ;;
        esac
        shift 2
        ;;
    --prefix=* | --destdir=* | --bin=*)
        value="${1#*=}"
        [ -n "$value" ] || die_usage "${1%%=*} needs a value"
        case "$1" in
        --prefix=*) prefix="$value" ;;
        --destdir=*) destdir="$value" ;;
        --bin=*) bin="$value" ;;
        esac
        shift
        ;;
    --ssh-login) ssh_login=1; shift ;;
    --no-ssh-login) ssh_login=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
    esac
done

case "$prefix" in
/*) prefix="${prefix%/}" ;;
*) die_usage "--prefix must be an absolute path, not '$prefix'" ;;
esac
case "$prefix$destdir$bin" in
*[[:space:]]*) die_usage "--prefix, --destdir and --bin must not contain spaces" ;;
esac
if [ "$purge" -eq 1 ] && [ "$uninstall" -eq 0 ]; then
    die_usage "--purge goes with --uninstall"
fi
if [ "$uninstall" -eq 1 ] && { [ -n "$bin" ] || [ -n "$ssh_login" ]; }; then
    die_usage "--bin and --[no-]ssh-login are for installing, not --uninstall"
fi
if [ -n "$destdir" ]; then
    mkdir -p -- "$destdir" || die "cannot create --destdir $destdir"
    destdir="$(cd -- "$destdir" && pwd)"
    [ "$destdir" != / ] || destdir=
elif [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root: run it with sudo, or stage it with --destdir DIR"
fi
staged=0
[ -z "$destdir" ] || staged=1

manifest_rel="$prefix/share/alknet/install.manifest"
manifest="$destdir$manifest_rel"
unit_rel=/etc/systemd/system/alknet.service
dropin_rel=/etc/systemd/system/alknet.service.d/ssh-login.conf

work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT

sha() { sha256sum -- "$1" | cut -d' ' -f1; }
mode_of() { printf '%04o' "0$(stat -c %a -- "$1")"; }

# What the previous run recorded: "file SHA256 MODE PATH", "link TARGET PATH" and "dir PATH"
# lines.
declare -A recorded=()
declare -a old_dirs=()
if [ -f "$manifest" ]; then
    while read -r kind a _ c; do
        case "$kind" in
        file) recorded["$c"]="$a" ;;
        dir) old_dirs+=("$a") ;;
        esac
    done <"$manifest"
fi

changes=0
note() {
    echo "$1"
    changes=$((changes + 1))
}

# ---------------------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------------------
if [ "$uninstall" -eq 1 ]; then
    if [ ! -f "$manifest" ] && [ "$purge" -eq 0 ]; then
        echo "nothing to uninstall: no manifest at $manifest"
        exit 0
    fi
    if [ "$staged" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now alknet.service 2>/dev/null || true
    fi
    declare -a dirs=() kept=()
    if [ -f "$manifest" ]; then
        while read -r kind a b c; do
            case "$kind" in
            file)
                target="$destdir$c"
                [ -e "$target" ] || [ -L "$target" ] || continue
                if [ "$purge" -eq 0 ] && [[ "$c" == /etc/* ]] && [ "$(sha "$target")" != "$a" ]; then
                    echo "kept $target (edited since it was installed; --purge removes it)"
                    kept+=("file $a $b $c")
                    continue
                fi
                rm -f -- "$target"
                note "removed $target"
                ;;
            link)
                target="$destdir$b"
                if [ -L "$target" ]; then
                    rm -f -- "$target"
                    note "removed $target"
                fi
                ;;
            dir) dirs+=("$a") ;;
            esac
        done <"$manifest"
        if [ "${#kept[@]}" -gt 0 ]; then
            # What stays is still listed, so that a later --uninstall --purge removes it and
            # the directories this installer made.
            { printf 'dir %s\n' "${dirs[@]}"; printf '%s\n' "${kept[@]}"; } >"$work/manifest"
            install -m 0644 -- "$work/manifest" "$manifest"
        else
            rm -f -- "$manifest"
            note "removed $manifest"
        fi
    fi
    if [ "$purge" -eq 1 ]; then
        for path in /etc/alknet /var/lib/alknet /var/lib/private/alknet; do
            if [ -e "$destdir$path" ] || [ -L "$destdir$path" ]; then
                rm -rf -- "$destdir$path"
                note "purged $destdir$path"
            fi
        done
    else
        for path in /var/lib/alknet /var/lib/private/alknet; do
            if [ -d "$destdir$path" ]; then
                echo "kept the data directory $destdir$path (node key, identity store); --purge removes it"
                break
            fi
        done
    fi
    # Directories this installer created, deepest first, where they are now empty.
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        rmdir -- "$destdir${dirs[$i]}" 2>/dev/null || true
    done
    if [ "$staged" -eq 0 ]; then
        if command -v systemctl >/dev/null 2>&1; then
            systemctl daemon-reload || echo "warning: systemctl daemon-reload failed" >&2
        fi
        if command -v fail2ban-client >/dev/null 2>&1 && systemctl is-active -q fail2ban 2>/dev/null; then
            fail2ban-client reload >/dev/null || echo "warning: fail2ban-client reload failed" >&2
        fi
    fi
    [ "$changes" -gt 0 ] || echo "nothing changed"
    exit 0
fi

# ---------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------
if [ -z "$bin" ]; then
    bin="$tree/target/release/alknet"
    [ -x "$bin" ] || die "no binary at $bin: build it with 'cargo build --release' in $tree, or name one with --bin PATH"
fi
if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
    die "--bin $bin is not an executable file"
fi
for f in alknet.service alknet.toml 99-alknet.conf fail2ban/alknet.conf fail2ban/alknet.local \
    alknet.service.d/ssh-login.conf INSTALL.md; do
    [ -f "$here/$f" ] || die "$here/$f is missing: run the installer from an Alknet source tree"
done

# The unit with the binary and docs under this prefix.
sed -e "s#/usr/local/bin/alknet#$prefix/bin/alknet#g" \
    -e "s#file:///usr/share/doc/alknet/#file://$prefix/share/doc/alknet/#g" \
    "$here/alknet.service" >"$work/alknet.service"

declare -a new_entries=()
declare -a new_dirs=()

# Creates DIR (an absolute path below destdir) and its missing parents, recording the ones
# made here so that --uninstall removes them again.
make_dir() {
    local rel="$1" part="" seg
    local -a segs
    IFS=/ read -r -a segs <<<"${rel#/}"
    for seg in "${segs[@]}"; do
        part="$part/$seg"
        if [ ! -d "$destdir$part" ]; then
            mkdir -m 0755 -- "$destdir$part"
            new_dirs+=("$part")
        fi
    done
}

# put SRC MODE PATH: installs SRC as PATH (absolute, below destdir) with MODE. A file under
# /etc is the operator's once installed: when it was edited since (its content is neither
# the recorded one nor the new one), it stays and the new version goes beside it as .new.
put() {
    local src="$1" mode="$2" rel="$3"
    local target="$destdir$rel" want have
    want="$(sha "$src")"
    make_dir "$(dirname "$rel")"
    new_entries+=("file $want $mode $rel")
    if [ -f "$target" ]; then
        have="$(sha "$target")"
        if [ "$have" = "$want" ]; then
            if [ "$(mode_of "$target")" != "$mode" ]; then
                chmod "$mode" -- "$target"
                note "mode $mode $target"
            fi
            return
        fi
        if [[ "$rel" == /etc/* ]] && [ "$have" != "${recorded[$rel]:-}" ]; then
            if [ -f "$target.new" ] && [ "$(sha "$target.new")" = "$want" ]; then
                new_entries+=("file $want $mode $rel.new")
                return
            fi
            install -m "$mode" -- "$src" "$target.new"
            new_entries+=("file $want $mode $rel.new")
            note "kept $target (edited); the new version is $target.new"
            return
        fi
    fi
    # A new file replaces the old one in one rename, so a running process or a reader never
    # sees half of it.
    install -m "$mode" -- "$src" "$target.alknet-tmp"
    mv -f -- "$target.alknet-tmp" "$target"
    note "installed $target"
}

put "$bin" 0755 "$prefix/bin/alknet"

# link TARGET PATH: PATH (absolute, below destdir) as a symlink to TARGET.
link() {
    local to="$1" rel="$2"
    local target="$destdir$rel"
    make_dir "$(dirname "$rel")"
    new_entries+=("link $to $rel")
    if [ -L "$target" ] && [ "$(readlink -- "$target")" = "$to" ]; then
        return
    fi
    ln -s -- "$to" "$target.alknet-tmp"
    mv -fT -- "$target.alknet-tmp" "$target"
    note "installed $target -> $to"
}
link alknet "$prefix/bin/git-remote-alknet"
put "$work/alknet.service" 0644 "$unit_rel"
put "$here/alknet.toml" 0644 /etc/alknet/alknet.toml
put "$here/99-alknet.conf" 0644 /etc/sysctl.d/99-alknet.conf
put "$here/fail2ban/alknet.conf" 0644 /etc/fail2ban/filter.d/alknet.conf
put "$here/fail2ban/alknet.local" 0644 /etc/fail2ban/jail.d/alknet.local
put "$tree/README.md" 0644 "$prefix/share/doc/alknet/README.md"
put "$here/INSTALL.md" 0644 "$prefix/share/doc/alknet/INSTALL.md"
if [ -z "$ssh_login" ] && [ -n "${recorded[$dropin_rel]:-}" ]; then
    ssh_login=1 # an earlier --ssh-login run installed it: keep it (and keep it current)
fi
if [ "$ssh_login" = 1 ]; then
    put "$here/alknet.service.d/ssh-login.conf" 0644 "$dropin_rel"
elif [ -n "${recorded[$dropin_rel]:-}" ] && [ -f "$destdir$dropin_rel" ]; then
    # --no-ssh-login: removed, unless edited.
    if [ "$(sha "$destdir$dropin_rel")" = "${recorded[$dropin_rel]}" ]; then
        rm -f -- "$destdir$dropin_rel"
        rmdir -- "$(dirname "$destdir$dropin_rel")" 2>/dev/null || true
        note "removed $destdir$dropin_rel (--no-ssh-login: the service runs sandboxed)"
    else
        echo "kept $destdir$dropin_rel (edited); remove it by hand to run sandboxed"
        new_entries+=("file ${recorded[$dropin_rel]} 0644 $dropin_rel")
    fi
fi

# The manifest: directories made now or by an earlier run, then the files.
make_dir "$(dirname "$manifest_rel")"
{
    declare -A seen=()
    for d in "${old_dirs[@]}" "${new_dirs[@]}"; do
        [ -z "${seen[$d]:-}" ] || continue
        seen["$d"]=1
        echo "dir $d"
    done
    printf '%s\n' "${new_entries[@]}"
} >"$work/manifest"
if ! cmp -s -- "$work/manifest" "$manifest"; then
    install -m 0644 -- "$work/manifest" "$manifest"
fi

if [ "$changes" -eq 0 ]; then
    echo "nothing changed"
    exit 0
fi

if [ "$staged" -eq 1 ]; then
    cat <<EOF

Staged under $destdir. On the gateway, once these files are in place, run:
  systemctl daemon-reload
  sysctl -p /etc/sysctl.d/99-alknet.conf
  fail2ban-client reload        # if fail2ban runs
  systemctl enable --now alknet
EOF
    exit 0
fi

systemctl daemon-reload || echo "warning: systemctl daemon-reload failed (is systemd running?)" >&2
sysctl -q -p /etc/sysctl.d/99-alknet.conf || echo "warning: sysctl could not apply /etc/sysctl.d/99-alknet.conf" >&2
if command -v fail2ban-client >/dev/null 2>&1 && systemctl is-active -q fail2ban 2>/dev/null; then
    fail2ban-client reload >/dev/null || echo "warning: fail2ban-client reload failed: check /etc/fail2ban/jail.d/alknet.local" >&2
elif ! command -v fail2ban-client >/dev/null 2>&1; then
    echo "note: fail2ban is not installed; the filter and jail take effect once it is (apt-get install fail2ban)"
fi
echo
if systemctl is-active -q alknet 2>/dev/null; then
    echo "Alknet is running: 'systemctl restart alknet' starts the new version."
else
    echo "Start it: systemctl enable --now alknet"
    echo "Then: journalctl -u alknet (fingerprint, services) and 'sudo ALKNET_DATA_DIR=/var/lib/alknet $prefix/bin/alknet invite'"
fi

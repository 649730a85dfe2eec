#!/usr/bin/env bash
# Installs the Centimeo kiosk from this clone on Raspberry Pi OS (Bookworm), upgrades it when run
# again, and uninstalls it. `./install.sh --help` says how; README.md, "Deploy on a Raspberry Pi",
# walks through a first install. What goes where:
#   /opt/kiosk/.venv        a virtual environment with the kiosk installed (not editable: the
#                           clone may be removed), with README.md and docs/ beside it;
#                           /usr/local/bin/kiosk links to its kiosk command
#   /etc/kiosk/kiosk.toml   the profile (config/pi-<profile>.toml) and pi-common.toml, which it
#                           includes; neither is ever overwritten
#   /var/lib/kiosk          the ledger, owned by the kiosk user, mode 0750; always kept on upgrade
#   /etc/systemd/system/kiosk.service, and a journald drop-in that caps the journal's size
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/kiosk
VENV=$PREFIX/.venv
ETC=/etc/kiosk
STATE=/var/lib/kiosk
UNIT=/etc/systemd/system/kiosk.service
COMMAND=/usr/local/bin/kiosk  # the technician's `kiosk`, a link into the venv
JOURNALD=/etc/systemd/journald.conf.d/50-kiosk.conf
USER_NAME=kiosk
# The build backend kept in the venv, so that an upgrade can build the kiosk with no index.
BACKEND="setuptools>=70.1"

usage() {
    cat <<EOF
usage: sudo ./install.sh [--profile pulse|cctalk] [--python PY] [--offline] [--root DIR]
       sudo ./install.sh --uninstall [--purge] [--root DIR]

Installs the kiosk from this clone, or upgrades it: the ledger ($STATE) and the configuration
($ETC) are always kept. Run again to upgrade after 'git pull'.

  --profile NAME  the profile for $ETC/kiosk.toml: pulse (a CH-926 style pulse acceptor) or
                  cctalk (a ccTalk acceptor); needed on the first install. When $ETC/kiosk.toml
                  exists it is kept, and the profile is put beside it as kiosk.toml.new
  --python PY     the Python (3.11 or newer) that makes the virtual environment (default python3)
  --offline       no package index: install from the clone with what the venv (or PY's
                  site-packages) already holds, e.g. an upgrade on a kiosk without network
  --root DIR      lay the files out under DIR instead of /, and skip what cannot be done there
                  (apt-get, users and groups, raspi-config, systemctl), saying so; needs no root
  --uninstall     stop and disable the service, remove the unit, $PREFIX and the kiosk user;
                  $STATE and $ETC are kept
  --purge         with --uninstall: remove the ledger and the configuration too
  -h, --help      this help
EOF
}

say() { echo "install.sh: $*"; }
die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
misuse() {
    echo "install.sh: error: $* (see ./install.sh --help)" >&2
    exit 2
}
skip() { say "skipped under --root: $*"; }

# The profiles are config/pi-<name>.toml, but for the common part they include.
profiles() {
    local path names=()
    for path in "$SRC"/config/pi-*.toml; do
        path=${path##*/pi-}
        [ "$path" = common.toml ] || names+=("${path%.toml}")
    done
    echo "${names[*]}"
}

profile="" python=python3 offline=0 root="" uninstall=0 purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile | --python | --root)
            [ $# -ge 2 ] || misuse "$1 needs a value"
            case "$1" in
                --profile) profile=$2 ;;
                --python) python=$2 ;;
                --root) root=$2 ;;
            esac
            shift
            ;;
        --profile=*) profile=${1#*=} ;;
        --python=*) python=${1#*=} ;;
        --root=*) root=${1#*=} ;;
        --offline) offline=1 ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) misuse "unknown option $1" ;;
    esac
    shift
done

known_profile() {
    local name
    for name in $(profiles); do [ "$name" != "$1" ] || return 0; done
    return 1
}

if [ -n "$profile" ] && ! known_profile "$profile"; then
    misuse "unknown profile '$profile' (one of: $(profiles))"
fi
if [ "$uninstall" = 1 ] && [ -n "$profile" ]; then misuse "--profile goes with an install"; fi
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then misuse "--purge goes with --uninstall"; fi
if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [ "$root" != / ] || root=""
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo ./install.sh ...), or lay the files out under a directory with --root DIR"
fi

# The groups the unit's user joins: the serial port, the GPIO chip and the display's I2C bus.
GROUPS_CSV=$(sed -n 's/^SupplementaryGroups=//p' "$SRC/config/kiosk.service" | tr ' ' ',')

on_pi() { [ -r /proc/device-tree/model ] && tr -d '\0' </proc/device-tree/model | grep -q "Raspberry Pi"; }

# --- the system: packages, user, service --------------------------------------------------------

apt_packages() {
    local wanted=(python3-venv i2c-tools) missing=() p
    # apt's lgpio, seen by the venv (--system-site-packages), is the pin library on a Pi.
    if on_pi && apt-cache show python3-lgpio >/dev/null 2>&1; then wanted+=(python3-lgpio); fi
    if [ -n "$root" ]; then
        skip "apt-get install ${wanted[*]} (where missing)"
        return
    fi
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$offline" = 0 ] || die "--offline, but these packages are missing: ${missing[*]}"
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

user_and_groups() {
    local group
    if [ -n "$root" ]; then
        skip "useradd $USER_NAME (groups $GROUPS_CSV, created where missing)"
        return
    fi
    for group in ${GROUPS_CSV//,/ }; do
        if ! getent group "$group" >/dev/null; then
            # The unit does not start with a supplementary group that does not exist. Made here,
            # the group grants nothing until a udev rule gives it the device (Pi OS has them).
            groupadd --system "$group"
            say "created group $group (Raspberry Pi OS has it; elsewhere it grants nothing)"
        fi
    done
    if id "$USER_NAME" >/dev/null 2>&1; then
        usermod --append --groups "$GROUPS_CSV" "$USER_NAME"
    else
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --groups "$GROUPS_CSV" --comment "Centimeo kiosk" "$USER_NAME"
        say "created user $USER_NAME (groups $GROUPS_CSV)"
    fi
}

was_active=0
stop_service() {
    if [ -n "$root" ]; then
        skip "systemctl stop kiosk"
    elif systemctl is-active --quiet kiosk; then
        was_active=1
        say "stopping the kiosk for the upgrade"
        systemctl stop kiosk
    fi
}

raspi_config() {
    # Each a raspi-config function and its value (0 = on for these, 1 = off).
    local settings=("do_i2c 0") setting
    # The header's UART for a ccTalk level interface: the port on, the login console off it.
    if [ "$profile" = cctalk ]; then settings+=("do_serial_hw 0" "do_serial_cons 1"); fi
    if [ -n "$root" ]; then
        for setting in "${settings[@]}"; do skip "raspi-config nonint $setting"; done
        return
    fi
    if ! command -v raspi-config >/dev/null; then
        say "no raspi-config: enable I2C yourself (dtparam=i2c_arm=on) for the display"
        return
    fi
    for setting in "${settings[@]}"; do
        # shellcheck disable=SC2086  # the function and its value, as two words
        raspi-config nonint $setting || say "raspi-config nonint $setting failed: use raspi-config"
    done
    if [ "$profile" = cctalk ]; then
        say "serial port enabled and its console disabled: reboot before the first start" \
            "(on a Pi 3 or 4, the PL011 needs dtoverlay=disable-bt in /boot/firmware/config.txt)"
    fi
}

# --- the files ----------------------------------------------------------------------------------

stage=""
trap '[ -z "$stage" ] || rm -rf "$stage"' EXIT

venv() {
    local venv=$root$VENV index=() extra=""
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c pass 2>/dev/null; then
        say "upgrading the kiosk in $venv"
    else
        say "creating $venv"
        rm -rf "$venv"
        "$python" -m venv --system-site-packages "$venv" ||
            die "cannot create $venv (on Debian: apt-get install python3-venv)"
    fi
    [ "$offline" = 0 ] || index=(--no-index)
    if on_pi; then extra="[pi]"; fi
    local pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
    if [ "$offline" = 0 ]; then
        "${pip[@]}" install "$BACKEND" || die "pip could not install $BACKEND (network?)"
    fi
    # Built from a copy, so that the clone gets no build/ directory and no stale file in the wheel.
    stage=$(mktemp -d)
    cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/kiosk" "$SRC/drivers" "$SRC/sim" "$stage/"
    "${pip[@]}" install "${index[@]}" --no-build-isolation "$stage$extra" ||
        die "pip could not install the kiosk into $venv" \
            "(with --offline, its dependencies and $BACKEND must be there already)"
    install -d "$root$PREFIX/docs" "$root${COMMAND%/*}"
    install -m 0644 "$SRC/README.md" "$root$PREFIX/README.md"
    cp -R "$SRC/docs/." "$root$PREFIX/docs/"
    ln -sfn "$VENV/bin/kiosk" "$root$COMMAND"
}

fresh_config=0
config_file() {
    local shipped=$1 installed=$2
    if [ ! -e "$installed" ]; then
        install -m 0644 "$shipped" "$installed"
        say "installed $installed"
        return 0
    fi
    if ! cmp -s "$shipped" "$installed"; then
        install -m 0644 "$shipped" "$installed.new"
        say "kept $installed as it is; the shipped version is beside it: $installed.new"
    fi
}

configuration() {
    local etc=$root$ETC
    install -d -m 0755 "$etc"
    [ -e "$etc/kiosk.toml" ] || fresh_config=1
    config_file "$SRC/config/pi-common.toml" "$etc/pi-common.toml"
    if [ -n "$profile" ]; then config_file "$SRC/config/pi-$profile.toml" "$etc/kiosk.toml"; fi
    "$root$VENV/bin/kiosk" config check "$etc/kiosk.toml" ||
        die "$etc/kiosk.toml does not load with this version: fix it, then sudo systemctl start kiosk"
}

ledger_directory() {
    # Migrations are not run here: the daemon applies any pending ones when it opens the ledger
    # at its start, all in one transaction, with nothing else writing.
    install -d "$root$STATE"
    chmod 0750 "$root$STATE"
    if [ -n "$root" ]; then
        skip "chown -R $USER_NAME:$USER_NAME $STATE"
    else
        chown -R "$USER_NAME:$USER_NAME" "$STATE"
    fi
}

units() {
    install -D -m 0644 "$SRC/config/kiosk.service" "$root$UNIT"
    install -D -m 0644 "$SRC/config/journald-kiosk.conf" "$root$JOURNALD"
}

start_service() {
    if [ -n "$root" ]; then
        skip "systemctl daemon-reload; systemctl enable kiosk; systemctl start kiosk"
        return
    fi
    systemctl daemon-reload
    systemctl enable --quiet kiosk
    if [ "$fresh_config" = 1 ]; then
        # The ledger takes the kiosk's id at the first start: the profile's example id must not.
        say "installed and enabled, not started: set the kiosk id, slots and mqtt in" \
            "$ETC/kiosk.toml, check it with 'kiosk config check $ETC/kiosk.toml', then" \
            "'sudo systemctl start kiosk'"
    elif [ "$was_active" = 1 ]; then
        say "starting the kiosk (pending ledger migrations run as it opens the ledger)"
        systemctl start kiosk || die "the kiosk did not start: journalctl -u kiosk -n 50"
    else
        say "upgraded; the kiosk was not running: sudo systemctl start kiosk"
    fi
}

install_kiosk() {
    if [ ! -e "$root$ETC/kiosk.toml" ] && [ -z "$profile" ]; then
        misuse "first install: choose the coin acceptor with --profile (one of: $(profiles))"
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        die "$python: Python 3.11 or newer is needed (apt-get install python3), or pass --python"
    fi
    apt_packages
    user_and_groups
    stop_service
    venv
    configuration
    ledger_directory
    units
    raspi_config
    start_service
    say "journal capped by $JOURNALD: from the next boot, or sudo systemctl restart systemd-journald"
    if [ -z "$root" ] && [ -n "${SUDO_USER:-}" ] && ! id -nG "$SUDO_USER" | grep -qw "$USER_NAME"; then
        say "to reach the running kiosk with the kiosk command: sudo usermod -aG kiosk $SUDO_USER"
    fi
    say "done: $root$COMMAND -> $VENV/bin/kiosk, $root$ETC/kiosk.toml, ledger in $root$STATE"
}

uninstall_kiosk() {
    if [ -n "$root" ]; then
        skip "systemctl disable --now kiosk"
    elif [ -e "$UNIT" ]; then
        systemctl disable --now --quiet kiosk || true
    fi
    rm -f "$root$UNIT" "$root$JOURNALD"
    if [ "$(readlink "$root$COMMAND" || true)" = "$VENV/bin/kiosk" ]; then rm -f "$root$COMMAND"; fi
    rm -rf "$root$PREFIX"
    if [ -n "$root" ]; then
        skip "systemctl daemon-reload; userdel $USER_NAME"
    else
        systemctl daemon-reload
        if id "$USER_NAME" >/dev/null 2>&1; then userdel "$USER_NAME"; fi
        # Left behind by userdel while a technician is still a member.
        if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME"; fi
    fi
    if [ "$purge" = 1 ]; then
        rm -rf "$root$STATE" "$root$ETC"
        say "removed, with the ledger ($root$STATE) and the configuration ($root$ETC)"
    else
        say "removed; kept the ledger ($root$STATE) and the configuration ($root$ETC):" \
            "--purge removes them"
    fi
}

if [ "$uninstall" = 1 ]; then uninstall_kiosk; else install_kiosk; fi

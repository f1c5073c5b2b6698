#!/bin/sh
# Start the official image's entrypoint with the settings pgtape needs. PostgreSQL 15.19 and later
# decode only through the plugins output_plugin_libraries names; older servers refuse to start with
# a parameter they do not know. So ask the server binary, not its version number.
set -eu
set -- "$@" -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10
default=$(postgres --describe-config | awk -F'\t' '$1 == "output_plugin_libraries" { print $5; found = 1 }
                                                   END { exit !found }') && \
    set -- "$@" -c "output_plugin_libraries=${default:+$default, }wal2json"
exec docker-entrypoint.sh "$@"

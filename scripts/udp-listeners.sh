# Sourced by the demo and the benchmarks: udp_listeners DIR [IP] writes a
# self-signed certificate for `localhost` into DIR (cert.pem, key.pem, as an
# operator would make one) and prints the [[listeners]] tables of a KCP
# listener on IP:7010 and a QUIC listener on IP:7011 (IP default 10.77.0.1,
# the harness's gateway address), to append to a gateway config.
udp_listeners() {
    local dir=$1 ip=${2:-10.77.0.1}
    # An end-entity certificate (not a CA: TLS clients refuse a CA as a
    # server's own certificate).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
        -addext extendedKeyUsage=serverAuth -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    cat <<CFG

[[listeners]]
bind = "$ip:7010"
transport = "kcp"

[[listeners]]
bind = "$ip:7011"
transport = "quic"
tls_cert = "$dir/cert.pem"
tls_key = "$dir/key.pem"
CFG
}

"""The discovery rewrite shared by the registry plugins (nacos, nacos_grpc, eureka, consul).

Service registries answer "where is service S?" with pod IPs, which a mesh cannot route by
service. Each registry plugin is a small adapter that finds the instances in its registry's
answer; what they share lives here:

- `hosts`: the config every adapter takes (`hostTemplate`, `services`, `ports`,
  `namespaces`, `defaultNamespace`) and `HostMap`, which turns a service into its host
  name and port.
- `outcomes`: what became of each answer, counted in the plugin's declared metrics and
  logged at most every 10 s per reason; the answers left alone pass byte for byte.
- `grpc_frames`: gRPC's length-prefixed messages reassembled across body chunks, for
  registries that answer over gRPC (Nacos 2.x / 3.x).
"""

package gogocodec

// Tempo's gogo codec must replace gRPC's own "proto" codec, so its init has
// to run after gRPC's. Go >= 1.21 initialises packages in import-path order
// wherever imports allow, which runs this package ("github.com/...") first,
// and the distributor then panics pushing to the ingester ("invalid Go type
// tempopb.PreallocBytes"). Importing gRPC's codec makes it initialise first.
import _ "google.golang.org/grpc/encoding/proto"

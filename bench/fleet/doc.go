// Package fleet is the rollout benchmark of `imgmesh bench fleet`: N
// devices pull the same new image at the same moment, and the package
// measures how long each takes and how many bytes the upstream served.
//
// It runs, side by side in one invocation, three scenarios: baseline (every
// device pulls straight from the upstream), cold (every device pulls through
// its own imgmesh node, nothing cached anywhere) and warm (one node already
// holds the image, the others pull at once). The nodes are the real binary,
// started as child processes and driven as black boxes over HTTP.
//
// As root the fleet runs in network namespaces it makes (a bridge in its own
// namespace, one namespace per device and one for the upstream), every link
// shaped in both directions with tc tbf. With Loopback set it runs on
// 127.0.0.1 without root, the upstream rate-limited in process: a
// simulation, labelled as one.
package fleet

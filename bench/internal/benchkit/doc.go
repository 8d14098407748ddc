// Package benchkit holds what the benchmark commands under bench/ share:
// starting and stopping child processes by PID, reading their memory, timed
// and verified HTTP GETs of a blob, and writing a results report.
package benchkit

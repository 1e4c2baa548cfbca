// The control server (`remora control`): see docs/control-plane.md.
public enum RemoraControlPlaceholder {}

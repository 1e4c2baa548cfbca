// `remora control` and `remora ctl`: see docs/control-plane.md.

func controlCommand(_ argv: ArraySlice<String>) -> Int32 {
    printErr("remora control: not built yet")
    return 2
}

func ctlCommand(_ argv: ArraySlice<String>) -> Int32 {
    printErr("remora ctl: not built yet")
    return 2
}

import LNetControl

await Lnetctl.runMain()

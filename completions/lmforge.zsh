
#compdef lmforge

_lmforge_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _LMFORGE_COMPLETE=complete_zsh lmforge)
}

compdef _lmforge_completion lmforge

